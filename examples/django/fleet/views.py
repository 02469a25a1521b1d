"""The host's views: a sensor change, and Stripe's meter error reports (the webhook)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from sensormeter import WebhookError, handle_stripe_webhook

from .billing import sensormeter_settings
from .models import Company, Device


@csrf_exempt  # an API call in this example; a real app keeps its own auth and CSRF policy
@require_POST
def add_device(request: HttpRequest, company_id: int) -> JsonResponse:
    """Register a device; the post_save signal queues the company's report after commit."""
    company = get_object_or_404(Company, pk=company_id)
    device = Device.objects.create(company=company, serial=request.POST.get("serial", ""))
    return JsonResponse({"device_id": device.pk}, status=201)


@csrf_exempt
@require_POST
def retire_device(request: HttpRequest, device_id: int) -> JsonResponse:
    """Retire a device (kept for history); its company's report is queued the same way."""
    device = get_object_or_404(Device, pk=device_id)
    device.retired_at = timezone.now()
    device.save(update_fields=["retired_at"])
    return JsonResponse({"device_id": device.pk})


@csrf_exempt  # Stripe signs the request instead; it has no CSRF token
@require_POST
def stripe_meter_errors(request: HttpRequest) -> JsonResponse:
    """Stripe's meter error reports: mark the refused ledger rows rejected (docs/webhooks.md)."""
    try:
        result = handle_stripe_webhook(
            request.body,  # the raw bytes Stripe signed
            request.headers.get("Stripe-Signature"),
            settings=sensormeter_settings(),  # opens DATABASE_URL's ledger for this delivery
        )
    except WebhookError as exc:
        # 400: not from Stripe or unreadable. 503: Stripe could not be asked; it delivers again.
        return JsonResponse({"error": exc.problem}, status=503 if exc.retryable else 400)
    return JsonResponse({"handled": result.handled, "rows_marked": result.rows_marked})
