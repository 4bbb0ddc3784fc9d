"""Cloud in a box: EC2 nodes emulated on this host, booting lhorch's real user data.

moto's server is the control plane (EC2, S3, SSM, IAM over HTTP, reached through AWS_ENDPOINT_URL
at an address of the host's own, ``10.213.0.1``, on a dummy link). A node runner watches moto for
instances lhorch launched and turns each into a machine: a network namespace with a veth pair
(the instance's private address inside, routed from the host, so ``cloud.connector: direct``
reaches its Ray head), its own PID, UTS and mount namespaces (its hostname; private /etc, /opt, /root, /usr/local,
/tmp, /var/log), an instance-metadata stand-in at 169.254.169.254 (``imds``), and the instance's
user data run as root, exactly the text lhorch sent to EC2. The machine image (``image``) supplies
what an AMI and its VPC would. Powering off inside a node terminates its instance in moto and
removes the node; ``Box.interrupt`` is a spot interruption. ``Box.close`` (also at exit) removes
everything. Needs root and Linux namespaces (``ip netns``, ``unshare``), nothing else.
"""

from .box import Box, Node

__all__ = ["Box", "Node"]
