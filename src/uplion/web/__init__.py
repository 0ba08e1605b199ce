"""The browser face of uplion: a chat page and an admin dashboard under ``/ui``.

The pages are static HTML with small JavaScript modules (no build step) that call the gateway's
own JSON APIs with the API token the person signs in with. Nothing here reads the gateway's state:
the gateway only mounts ``mount()`` among its routes.
"""

from uplion.web.routes import mount

__all__ = ["mount"]
