"""Retrieval: the CLIP encoder and the Milvus datastore."""
