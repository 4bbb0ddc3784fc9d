"""The AWS provider: Ray clusters on EC2 that lhorch starts, watches and always tears down.

Split by capability, each module with the boto3 clients passed in:
- ``provider``: the ``lhorch.providers.base.Provider`` façade; builds the parts and delegates.
- ``settings`` (how to launch, one frozen value), ``context`` (clients, store and time they share),
  ``names`` (what things are called in AWS).
- ``launch`` (which types, markets and zones to try; starting nodes; waiting for the head),
  ``auxiliary`` (token parameter, security group, key pair, node role, bucket), ``health``
  (heartbeat, lost nodes, what is up), ``teardown`` (release, and the sweep behind ``lhorch gc``).
- Thin boto3 helpers: ``ec2`` (instance lifecycle), ``security`` (group, key pair, role rules),
  ``connect`` (reaching the head), ``s3`` (artifact staging), ``prices`` (live offers), ``retry``.
- No boto3 needed: ``bootstrap`` (user data and the dead-man switch), ``catalogue`` (bundled offers,
  used by the planner), ``records`` (intent rows in the store).

Importing this package imports nothing; each module imports botocore only if it calls AWS, and
``lhorch.providers.aws.catalogue`` never does. The core (``orchestrator/``) never imports boto3.
"""
