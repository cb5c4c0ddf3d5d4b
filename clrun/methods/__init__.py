"""Continual-learning methods: one file and one YAML (conf/method/NAME.yaml) each."""
