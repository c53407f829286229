from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.response import Response

from .health import UNHEALTHY, collect_health


@extend_schema(
    responses={200: dict, 503: dict},
    description="Health of the database, Redis, the chain RPC (head block age), the escrow contract "
    "(paused?) and the chain sync (lag in blocks, last scan). healthy/degraded → 200, unhealthy → 503.",
)
@api_view(["GET"])
@authentication_classes([])
@permission_classes([])
def health(request):
    report = collect_health()
    return Response(report, status=503 if report["status"] == UNHEALTHY else 200)


@extend_schema(
    responses={200: dict}, description="Liveness: the web process answers. Touches no database, cache or chain."
)
@api_view(["GET"])
@authentication_classes([])
@permission_classes([])
def health_live(request):
    return Response({"status": "alive"})
