"""The pipeline's stages, one module each (run by `sslpipe stage NAME`), and what they share."""
