from django.urls import path
from rest_framework.routers import SimpleRouter
from rest_framework_simplejwt.views import TokenRefreshView, TokenVerifyView

from accounts import api

router = SimpleRouter(trailing_slash=True)
router.register(r"tenants/(?P<slug>[-\w]+)/keys", api.ApiKeyViewSet, basename="tenant-keys")
router.register(r"tenants/(?P<slug>[-\w]+)/members", api.MemberViewSet, basename="tenant-members")
router.register(r"tenants/(?P<slug>[-\w]+)/audit", api.AuditViewSet, basename="tenant-audit")

urlpatterns = [
    path("auth/token/", api.LoginView.as_view(), name="token"),
    path("auth/token/refresh/", TokenRefreshView.as_view(), name="token-refresh"),
    path("auth/token/verify/", TokenVerifyView.as_view(), name="token-verify"),
    path("auth/logout/", api.LogoutView.as_view(), name="logout"),
    path("tenants/", api.TenantListView.as_view(), name="tenants"),
    *router.urls,
]
