"""Code that runs inside a serving container rather than at build time (standard library only, plus
`deployc serve`): e.g. `python -m deployc.container.vertex_fetch`, the Vertex AI model download."""
