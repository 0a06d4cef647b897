"""The Gradio app (sample, reconstruct, complete). Not built yet: it comes after stage 2."""
