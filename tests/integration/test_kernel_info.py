"""What clients ask for their own purposes never runs code in the kernel that changes its state:
the supervisor answers kernel_info_request from the reply the kernel gave once (IPython's banner
draws a random "Tip" on every kernel_info_request, advancing the kernel's `random` state)."""

from __future__ import annotations

import pytest
from kctesting import Kernel

pytestmark = pytest.mark.timeout(300)


def test_a_client_connecting_leaves_the_random_state_alone(kernel: Kernel):
    client = kernel.client
    client.run("import random; random.seed(5); before = random.getstate()")
    # A second client, as JupyterLab on reconnect: it sends kernel_info_request on shell.
    kernel.connect()
    assert client.value("random.getstate() == before") is True


def test_kernel_info_on_control_leaves_the_random_state_alone(kernel: Kernel):
    client = kernel.client
    kc = kernel.connect().kc
    client.run("import random; random.seed(5); before = random.getstate()")
    request = kc.session.msg("kernel_info_request")
    kc.control_channel.send(request)
    reply = kc.control_channel.get_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != request["header"]["msg_id"]:
        reply = kc.control_channel.get_msg(timeout=30)
    assert reply["msg_type"] == "kernel_info_reply"
    assert reply["content"]["implementation"] == "ipython"
    assert client.value("random.getstate() == before") is True
