from django.conf import settings
from django.http import HttpRequest


def product(request: HttpRequest) -> dict[str, str]:
    """Values every page shows: the product name and the edition in force."""
    return {"product_name": "servicedesk", "edition": settings.EDITION}
