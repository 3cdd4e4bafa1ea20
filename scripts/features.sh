# Sourced by scripts/build.sh and scripts/test.sh: the features of the workstation build, which
# the set-up builds and the tests test. The board binary's two opt-in features ride along:
# `mqtt-tls` (tests/fleet.rs checks mqtts:// brokers) and `multithread` (rayon inside tract, 4 MB
# more binary: tests/live_pipeline.rs reads on two threads; the default build's refusal of
# --threads 2 is a library test of the same check). One set of features, one build: a change
# here compiles faceage-device, tract and everything above them again.
# shellcheck disable=SC2034
WORKSTATION_FEATURES=faceage-device/mqtt-tls,faceage-device/multithread
