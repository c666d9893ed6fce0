"""Networks as encoders: spec strings (registry), model families (bundled, timm, open_clip, torchscript, any
nn.Module), and the Encoder that runs them with their preprocessing (encoder)."""
