"""The AWS provider: Ray clusters on EC2 that lhorch starts, watches and always tears down.

Split by capability, each module with the boto3 clients passed in:
``ec2`` (instance lifecycle), ``security`` (security group, key pair, instance role), ``connect``
(reaching the head), ``bootstrap`` (user data and the dead-man switch), ``prices`` (offers),
``s3`` (artifact staging), ``records`` (intent rows in the store) and ``provider`` (the
``lhorch.providers.base.Provider`` implementation that ties them together).

Importing this package imports boto3; the core (``orchestrator/``) never does.
"""
