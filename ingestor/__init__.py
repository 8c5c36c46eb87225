"""streamops ingestor: data arrival → validated, versioned Parquet feature store."""
