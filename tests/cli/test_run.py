"""`cortex run` as a user runs it: one function of main.py, in process, JSON on stdout."""

from __future__ import annotations

import json

from tests.conftest import APPS, run_cortex


def run_in(app: str, *args: str):
    return run_cortex("run", *args, cwd=APPS / app)


def test_run_prints_the_json_result_of_a_function():
    result = run_in("echo", "main.py::predict", "--data", '{"prompt": "ab", "n": 2}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"echo": "abab"}


def test_key_value_pairs_are_json_when_they_parse_else_strings():
    result = run_in("echo", "anything", "--a", "3", "--name", "plain text", "--tags", '["x", 1]', "--on")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "a": 3,
        "extra": {"name": "plain text", "tags": ["x", 1], "on": True},
    }


def test_pairs_override_data_and_dashes_become_underscores():
    result = run_in("echo", "with_run_id", "--data", '{"value": "from-data"}', "--value=from-pair")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["value"] == "from-pair"
    assert len(answer["run_id"]) == 36  # a uuid4 is injected, as the server does
    dashed = run_in("echo", "anything", "--a", "1", "--some-key", "v")
    assert json.loads(dashed.stdout) == {"a": 1, "extra": {"some_key": "v"}}


def test_async_function_is_awaited():
    result = run_in("echo", "apredict", "--x", "2", "--factor", "1.5")
    assert (result.returncode, json.loads(result.stdout)) == (0, 3.0)


def test_pydantic_arguments_and_dataclass_result():
    result = run_cortex(
        "run",
        str(APPS / "echo" / "main.py") + "::buy",
        "--item",
        '{"name": "pen", "price": 2}',
        "--quantity",
        "3",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"name": "pen", "total": 6.0}


def test_app_dir_target_and_bare_function_name_find_main_py():
    by_dir = run_cortex("run", f"{APPS / 'echo'}::no_args")
    assert (by_dir.returncode, by_dir.stdout.strip()) == (0, '"pong"')


def test_generator_prints_one_json_line_per_chunk():
    result = run_in("stream_words", "words", "--text", "a b c")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ['"a"', '"b"', '"c"']


def test_async_generator_streams_chunks():
    result = run_in("stream_words", "awords")
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"word": "hello"},
        {"word": "async"},
        {"word": "world"},
    ]


def test_bad_arguments_give_the_servers_422_message_and_exit_1():
    result = run_in("echo", "predict", "--prompt", "42")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == "Error: predict(): parameter 'prompt' expects str, got 42 (int)."
    missing = run_in("echo", "predict", "--promt", "hi")
    assert missing.stderr.strip() == (
        "Error: predict(): missing required parameter 'prompt' (str); unexpected parameter 'promt' "
        "(did you mean 'prompt'? predict() accepts: prompt, n)."
    )


def test_unknown_function_lists_the_public_ones():
    result = run_in("echo", "predcit")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("Error: No function 'predcit' in main.py. Public functions: ")
    assert "predict" in result.stderr and "_helper" not in result.stderr


def test_exception_is_one_line_without_traceback_unless_debug():
    result = run_in("raises", "boom", "--message", "no good")
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: ValueError: no good"
    debug = run_in("raises", "boom", "--debug")
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "raise ValueError(message)" in debug.stderr
    assert debug.stderr.strip().endswith("Error: ValueError: bad input")


def test_async_exception_and_exception_mid_stream():
    assert run_in("raises", "aboom").stderr.strip() == "Error: KeyError: 'missing'"
    midway = run_in("stream_words", "afails_midway")
    assert midway.returncode == 1
    assert midway.stdout.splitlines() == ['{"i":0}', '{"i":1}']
    assert midway.stderr.strip() == "Error: RuntimeError: async model fell over"


def test_result_that_is_not_json_names_the_function_and_type():
    result = run_in("raises", "opaque")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: opaque() returned a value that cannot be written as JSON")
    assert "Opaque" in result.stderr


def test_what_the_app_prints_goes_to_stderr(tmp_path):
    (tmp_path / "main.py").write_text(
        "print('importing')\n\ndef run(x: int):\n    print('called')\n    return x\n"
    )
    result = run_cortex("run", "run", "--x", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "5\n"
    assert result.stderr.splitlines() == ["importing", "called"]


def test_import_error_and_bad_targets_say_what_to_do(tmp_path):
    broken = run_cortex("run", f"{APPS / 'import_error'}/main.py::run")
    assert broken.returncode == 1 and broken.stderr.startswith("Error: main.py failed to import")
    other_file = run_cortex("run", "app.py::run", cwd=tmp_path)
    assert other_file.stderr.strip() == (
        "Error: app.py: cortex runs the functions of main.py, as Cerebrium serves them. Use main.py::run."
    )
    no_function = run_cortex("run", "main.py", cwd=tmp_path)
    assert no_function.stderr.strip() == "Error: Name the function to call: cortex run main.py::FUNCTION."
    bad_data = run_in("echo", "predict", "--data", "{nope")
    assert bad_data.returncode == 1 and bad_data.stderr.startswith("Error: --data is not valid JSON: ")
    stray = run_in("echo", "predict", "hi")
    assert stray.stderr.strip() == (
        "Error: Unexpected argument 'hi'. Pass arguments as --name value, or all at once with --data JSON."
    )
