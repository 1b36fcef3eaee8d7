#!/bin/sh
# Graphviz's dot as PlantUML runs it (GRAPHVIZ_DOT), under the same address-space limit as the dot that draws .dot
# files (DIAGRAM_DOT_MAX_MEMORY_MB): PlantUML starts dot itself, so the limit is set here.
ulimit -v "$DIAGRAM_DOT_LIMIT_KB" || exit 70
exec "$DIAGRAM_DOT_REAL" "$@"
