"""The admin's sign-in, throttled like /api/auth/token/; mounted ahead of
admin.site.urls, which has the same path."""

from django.urls import path

from accounts.admin import admin_login

urlpatterns = [path("login/", admin_login, name="admin-login")]
