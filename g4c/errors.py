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


class InputError(G4CError):
    """Bad input to a session: token id out of range, empty prompt, context overflow."""
