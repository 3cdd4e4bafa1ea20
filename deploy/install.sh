#!/bin/sh
# Installs faceage on the board from an unpacked release bundle:
#   tar xzf faceage-*.tar.gz && cd faceage-*/ && sudo ./install.sh
# Puts the binary and models in /opt/faceage, the settings in /etc/faceage/faceage.env (kept
# if already there), the counts log in /var/lib/faceage, and starts the `faceage` service.
set -eu
[ "$(id -u)" = 0 ] || { echo "run as root: sudo ./install.sh" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)

id faceage >/dev/null 2>&1 || useradd --system --home /var/lib/faceage --shell /usr/sbin/nologin faceage
usermod -a -G video faceage

install -d /opt/faceage/bin /opt/faceage/models /opt/faceage/kiosk /etc/faceage
install -m 755 "$here/bin/faceage" /opt/faceage/bin/faceage
install -m 644 "$here"/models/* /opt/faceage/models/
install -m 755 "$here/kiosk/kiosk.sh" /opt/faceage/kiosk/kiosk.sh
install -m 644 "$here/kiosk/autostart" /opt/faceage/kiosk/autostart
[ -f /etc/faceage/faceage.env ] || install -m 644 "$here/faceage.env" /etc/faceage/faceage.env
install -m 644 "$here/faceage.service" /etc/systemd/system/faceage.service
ln -sf /opt/faceage/bin/faceage /usr/local/bin/faceage

# A quick self-check before the service starts: the model loads and reads a face-free frame.
/opt/faceage/bin/faceage bench --model /opt/faceage/models/faceage-run-int8.onnx --runs 20 >/dev/null

systemctl daemon-reload
systemctl enable --now faceage
echo "faceage installed: systemctl status faceage; kiosk page on http://127.0.0.1:8080/"
echo "counts: /var/lib/faceage/counts-YYYY-MM-DD.jsonl; summary: faceage report /var/lib/faceage/counts-*.jsonl"
