"""Names of the Ray Serve deployments: what Serve configs, the draining runner and operators refer to."""

MODEL_DEPLOYMENT = "TTSModel"
INGRESS_DEPLOYMENT = "APIIngress"
STATE_DEPLOYMENT = "SharedState"
