"""The sdlora web UI (Gradio). Imports sdlora, never the other way round; no torch at module scope."""
