#!/bin/sh
# Opens the faceage kiosk page full-screen once the service answers. Started by the desktop
# session's autostart (see README, "Kiosk on a Raspberry Pi").
URL="${FACEAGE_KIOSK_URL:-http://127.0.0.1:8080/}"
until wget -q -O /dev/null "${URL}api/counts" 2>/dev/null; do sleep 2; done
BROWSER=$(command -v chromium-browser || command -v chromium)
exec "$BROWSER" --kiosk --noerrdialogs --disable-infobars --disable-session-crashed-bubble \
  --no-first-run --disable-background-networking --disable-component-update --disable-sync \
  --check-for-update-interval=31536000 --incognito "$URL"
