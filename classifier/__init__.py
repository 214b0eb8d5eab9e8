"""Image-classification workbench engine: data, models, training, metrics, prediction. Never imports streamlit."""
