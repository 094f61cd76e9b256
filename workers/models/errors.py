class ModelMissingError(RuntimeError):
    """A model's weights are not on this machine and cannot be fetched.

    The message names the model and the fix; the CLI prints it without a traceback.
    """
