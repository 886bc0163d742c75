"""Operations: logging, metrics, the container entrypoint."""
