"""Retrieval: a Qdrant vector store behind /v1/retrieval."""
