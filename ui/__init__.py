"""Streamlit glue for the workbench app: session state, shared widgets, cached loaders. Imports streamlit."""
