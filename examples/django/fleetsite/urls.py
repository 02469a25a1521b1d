"""The example project's URLs."""

from django.urls import path
from fleet import views

urlpatterns = [
    path("companies/<int:company_id>/devices", views.add_device),
    path("devices/<int:device_id>/retire", views.retire_device),
    path("stripe/meter-errors", views.stripe_meter_errors),
]
