"""What a search leaves behind: Parquet result tables and MLflow runs."""
