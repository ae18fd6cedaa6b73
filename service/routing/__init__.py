"""The routing core: MESS+ decisions, tenants' queues, feedback and learning. No gRPC, no SQL.

    router.py    Router: the ledger every driver (server/, replay/) runs
    policy.py    Policy: the decision math and its hooks; registry.py names the policies
    tenant.py    a tenant's state and its queue's math
    pricing.py   cost estimates per model and request
    heads.py     the per-model Bayesian heads; predictor.py: encoder + heads
"""
