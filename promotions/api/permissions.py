"""Who may do what through the API: writes need a staff user holding the model permission the admin would
ask for (``promotions.add_product``, ``promotions.change_flashpromo``, ...); reads are public, and what a read
shows depends on :func:`sees_everything`.

The admin refuses a staff user without a permission; so does the API, with a 403 naming the permission.
"""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

__all__ = ["VIEW_PROMOS", "StaffWithModelPermission", "sees_everything"]

#: What a staff user needs to see every promo (scheduled, ended, cancelled) with its notification counts.
VIEW_PROMOS = "promotions.view_flashpromo"


class StaffWithModelPermission(BasePermission):
    """Safe methods: anyone. Others: an authenticated staff user with every permission the view lists for the
    method in ``required_permissions`` (a method without an entry is refused, so a new handler is closed until
    someone says who may call it). Unauthenticated: 401."""

    message = "Only staff users can change products and promos."

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method in SAFE_METHODS or not hasattr(view, (request.method or "").lower()):
            return True  # reads are public; a method the view does not serve is 405 for everyone, not 401
        user = request.user
        if user is None or not user.is_authenticated or not user.is_staff:
            return False
        required: dict[str, tuple[str, ...]] = getattr(view, "required_permissions", {})
        if request.method not in required:
            return False
        missing = [perm for perm in required[request.method] if not user.has_perm(perm)]
        if missing:
            self.message = f"Your user lacks the permission {', '.join(missing)} this request needs."
            return False
        return True


def sees_everything(request: Request) -> bool:
    """Whether the caller sees every promo with its notification counts: a staff user with ``VIEW_PROMOS``.
    Anyone else - anonymous, a shopper's token - sees the public view: active promos, no counts."""
    user = request.user
    return bool(user is not None and user.is_authenticated and user.is_staff and user.has_perm(VIEW_PROMOS))
