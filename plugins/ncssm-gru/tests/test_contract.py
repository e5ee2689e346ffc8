"""ncssm's contract check on this plugin's policy, as every plugin should run it in its tests.

``check_policy`` finds ``gru`` through the installed entry point (``pip install -e .`` first),
builds it with ``make`` and checks the parallel and one-step forms in every policy family, the
gradients, and that ``dropout`` and ``train=`` are honoured; a failure is one sentence.
"""

from ncssm_policies.testing import check_policy


def test_gru_passes_the_plugin_contract():
    passed = check_policy("gru")
    assert any("dropout" in line for line in passed)

