"""The one error hierarchy. Every message names the file, key or tensor involved."""


class G4CError(Exception):
    """Base of every error this suite raises on purpose."""


class GGUFFormatError(G4CError):
    """The file is not a readable GGUF, or a key/tensor has the wrong type or shape."""


class UnsupportedModelError(G4CError):
    """A valid GGUF of an architecture or feature this suite does not run."""


class UnsupportedQuantError(UnsupportedModelError):
    """A tensor is stored in a GGML type the runtime cannot read."""


class DeviceUnavailableError(G4CError):
    """A runtime's device (GPU, driver, library) is absent."""


class NotSupported(G4CError):
    """The runtime lacks what this call needs (full logits from a server that gives only its
    top tokens, a model other than the one a server serves): the conformance harness records
    the test as not supported, with this message, never as failed."""


class InputError(G4CError):
    """Bad input to a session: token id out of range, empty prompt, context overflow."""


class ResourceUnavailable(G4CError):
    """This machine lacks what a step needs (host or device memory, disk space): neither the
    runtime's fault nor the input's. The conformance harness skips the test with the figures;
    a command prints the one line, as for every G4CError."""

    def __init__(self, message: str, *, resource: str, needed: int, available: int, where: str):
        super().__init__(message)
        self.resource = resource  # "host memory", "device memory" or "disk"
        self.needed = needed  # bytes
        self.available = available  # bytes
        self.where = where  # the path, or the model and runtime, the figures are about
