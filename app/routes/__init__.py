from app.metrics import metrics
from app.openapi import openapi
from app.routes.admin import key_usage
from app.routes.chat import chat_completions
from app.routes.health import health, ready
from app.routes.models import list_models
from app.routes.playground import check_request
from app.routes.sessions import delete_session, get_session

ROUTES = [chat_completions, list_models, health, ready, get_session, delete_session, metrics, key_usage, openapi,
          check_request]
