"""The first start of a real server creates the admin key; later starts leave it alone."""

import stat

import httpx

from tests.live import Stack, free_port


def test_first_start_writes_the_admin_key_once_with_mode_0600(tmp_path):
    stack = Stack(tmp_path / "var")
    key_file = stack.data_dir / "admin.key"
    for start in (1, 2):
        port = free_port()
        stack.start("api", "serve", "--port", str(port), "--devices", "cpu")
        url = f"http://127.0.0.1:{port}"
        stack.wait_ready(url)
        key = key_file.read_text().strip()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert httpx.get(f"{url}/datasets", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert httpx.get(f"{url}/datasets").status_code == 401
        stack.stop("api")
        log = stack.log.read_text()
        assert log.count("Admin API key (shown once") == 1, start
        assert log.count(key) == 1  # printed on the first start only, never logged again
        if start == 1:
            first = key
    assert key == first


def test_a_deployment_can_preset_the_first_admin_key(tmp_path):
    preset = "mlps_" + "k" * 43
    stack = Stack(tmp_path / "var", env={"MLPS_ADMIN_KEY": preset})
    stack.run("migrate")
    port = free_port()
    stack.start("api", "api", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    stack.wait_ready(url)
    assert httpx.get(f"{url}/datasets", headers={"Authorization": f"Bearer {preset}"}).status_code == 200
    assert (stack.data_dir / "admin.key").read_text().strip() == preset
    stack.stop("api")
    assert preset not in stack.log.read_text()


def test_a_weak_preset_admin_key_is_refused(tmp_path):
    import subprocess
    import sys

    stack = Stack(tmp_path / "var", env={"MLPS_ADMIN_KEY": "secret"})
    stack.run("migrate")
    done = subprocess.run([sys.executable, "-m", "service.cli", "api", "--port", str(free_port())], env=stack.env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "MLPS_ADMIN_KEY: an API key is 'mlps_' then letters" in done.stderr
    assert not (stack.data_dir / "admin.key").exists()
