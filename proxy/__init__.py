"""chat-stream-proxy: an OpenAI-compatible chat proxy that keeps tokens streaming end to end."""

from proxy.app import create_app
from proxy.settings import Settings, load_settings

__all__ = ["Settings", "create_app", "load_settings"]
__version__ = "0.1.0"
