class DataError(ValueError):
    """Input data that cannot be used. The message names the file and says what to do."""
