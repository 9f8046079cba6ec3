"""PANet++ Studio web app: a thin Gradio layer over `core`."""
