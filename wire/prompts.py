"""The project's default prompts for describing a diagram: the playground's, the HTTP ``/infer``'s (INFER_PROMPT)."""

DEFAULT_SYSTEM_PROMPT = (
    "You read business process diagrams (BPMN, flowcharts, swim-lane diagrams) and describe exactly what they show. "
    "Do not invent steps that are not in the diagram."
)
DEFAULT_PROMPT = (
    "Describe this process diagram as a Markdown table with one row per step, in the order the process runs. "
    "Columns: Step (number), Activity, Role (the lane or actor who does it), Next (the step or steps that follow; "
    "for a decision, the condition of each branch). After the table, name the start and end events."
)
