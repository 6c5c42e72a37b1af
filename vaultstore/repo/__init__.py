"""The content-addressed repository: records, objects, packs, trees, manifests."""
