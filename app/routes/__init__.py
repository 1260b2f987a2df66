from app.routes.chat import chat_completions
from app.routes.health import health, ready
from app.routes.models import list_models

ROUTES = [chat_completions, list_models, health, ready]
