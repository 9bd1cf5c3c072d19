"""Vision with attention: Fashion-MNIST classification (ViT against a CNN), neighbourhood attention, captioning
and DETR-style detection on scenes built from real Fashion-MNIST items."""
