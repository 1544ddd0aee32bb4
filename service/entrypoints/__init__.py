"""Each process's entry code: what `orders-service role <role>` runs, on top of the composition root.

`roles.ROLE_RUNNERS` maps a role to its runner; each runner imports only its own role's module.
"""
