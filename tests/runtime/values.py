"""Values the runtime server fixture and its tests share (a plain module: tests never import a
conftest)."""

API_KEY, ADMIN_KEY = "rt-key", "rt-admin"
IMAGE_LIMIT, IMAGE_SEED = 20_000, 11  # the served image_encoder: largest image (bytes), seed
