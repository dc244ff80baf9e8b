"""The MMBee ranker's data path (DistGraph feature store, batches), training and pipeline stage."""
