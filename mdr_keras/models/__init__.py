"""Models of mdr: retrieval and ranking models wiring encoders, embeddings, towers, backbones and tasks."""
