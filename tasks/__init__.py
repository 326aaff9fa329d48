"""Tasks: one file each; importing this package registers them all."""
from mmssl.tasks import cpc_audio  # noqa: F401
