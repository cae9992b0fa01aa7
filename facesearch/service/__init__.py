"""The face-search service: an HTTP API and a web page over one index, enrolments and removals live.

`create_app(ServiceConfig(index_dir, model_dir))` is a FastAPI app; `facesearch serve` runs it on
uvicorn. See README.md here for the endpoints, writes and safety rules.
"""

from facesearch.service.app import create_app, create_app_from_environment
from facesearch.service.config import ServiceConfig, ServiceConfigError, check_bind, read_api_keys

__all__ = ["ServiceConfig", "ServiceConfigError", "check_bind", "create_app", "create_app_from_environment",
           "read_api_keys"]
