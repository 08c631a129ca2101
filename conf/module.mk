# conf/: the INI configuration (built into libstaged.a).
TESTS += test_config
test_config_SRC := tests/test_config.c
