// Connects to a sealgate gateway, seals a reading every 10 s and publishes it
// on sealed/<device id>/telemetry. The nonce counter keeps its reservation in
// NVS (Preferences), written once per RESERVE_K messages, so a reboot never
// reuses a nonce. Needs the PubSubClient library and the arduino-esp32 core
// (which brings mbedTLS). Not built in this repository: see ../../../README.md.
#include <Arduino.h>
#include <PubSubClient.h>
#include <Preferences.h>
#include <WiFi.h>
#include <esp_random.h>
#include <time.h>

#include "sealgate.h"

static const char *WIFI_SSID = "your-ssid";
static const char *WIFI_PASS = "your-password";
static const char *GATEWAY = "gateway.local";
static const uint16_t GATEWAY_PORT = 1883;
static const char *DEVICE_ID = "esp32-a1";
static const uint32_t KID = 1;
// The device secret S, 64 hex digits, shown once when the device was
// registered. In production flash it into NVS rather than the sketch.
static const char *SECRET_HEX = "0000000000000000000000000000000000000000000000000000000000000000";
static const uint64_t RESERVE_K = 1000;
static const char *TOPIC = "sealed/esp32-a1/telemetry";

static Preferences prefs;
static WiFiClient net;
static PubSubClient mqtt(net);
static sg_device dev;
static sg_nonce_counter counter;

// NVS writes one key atomically, as sg_store_fn requires.
static int load_reservation(void *, uint64_t *value) {
  if (!prefs.isKey("nonce_res")) {
    return SG_STORE_EMPTY;
  }
  *value = prefs.getULong64("nonce_res", 0);
  return SG_STORE_OK;
}

static int store_reservation(void *, uint64_t value) {
  return prefs.putULong64("nonce_res", value) == sizeof value ? 0 : -1;
}

// A true random number generator while Wi-Fi or Bluetooth is running.
static int fill_random(void *, uint8_t *buf, size_t len) {
  esp_fill_random(buf, len);
  return 0;
}

static bool parse_secret(uint8_t out[SG_SECRET_LEN]) {
  if (strlen(SECRET_HEX) != 2 * SG_SECRET_LEN) {
    return false;
  }
  for (size_t i = 0; i < SG_SECRET_LEN; i++) {
    char pair[3] = {SECRET_HEX[2 * i], SECRET_HEX[2 * i + 1], 0};
    char *end;
    out[i] = (uint8_t)strtoul(pair, &end, 16);
    if (*end != 0) {
      return false;
    }
  }
  return true;
}

static void halt(const char *what, int status) {
  Serial.printf("%s: %s\n", what, sg_status_name((sg_status)status));
  for (;;) {
    delay(1000);
  }
}

static void connect_mqtt() {
  while (!mqtt.connected()) {
    // A token valid for an hour; a new one for every connect.
    time_t now = time(nullptr);
    uint64_t expiry = now > 1700000000 ? (uint64_t)now + 3600 : 0;
    char password[SG_CONNECT_PASSWORD_SIZE];
    size_t len;
    int rc = sg_connect_password(&dev, expiry, password, sizeof password, &len);
    if (rc != SG_OK) {
      halt("connect password", rc);
    }
    if (!mqtt.connect(dev.device_id, dev.device_id, password)) {
      Serial.printf("MQTT connect failed (%d), retrying\n", mqtt.state());
      delay(5000);
    }
  }
}

void setup() {
  Serial.begin(115200);
  uint8_t secret[SG_SECRET_LEN];
  if (!parse_secret(secret)) {
    halt("secret", SG_ERR_BAD_ARG);
  }
  int rc = sg_device_init(&dev, DEVICE_ID, KID, secret);
  memset(secret, 0, sizeof secret);
  if (rc != SG_OK) {
    halt("device", rc);
  }
  prefs.begin("sealgate", false);
  rc = sg_nonce_begin(&counter, RESERVE_K, load_reservation, store_reservation, nullptr);
  if (rc != SG_OK) {
    halt("nonce reservation", rc);
  }
  WiFi.begin(WIFI_SSID, WIFI_PASS);
  while (WiFi.status() != WL_CONNECTED) {
    delay(500);
  }
  configTime(0, 0, "pool.ntp.org");
  mqtt.setServer(GATEWAY, GATEWAY_PORT);
  mqtt.setBufferSize(512);
}

void loop() {
  connect_mqtt();
  mqtt.loop();
  static uint32_t last = 0;
  if (millis() - last < 10000) {
    return;
  }
  last = millis();

  char body[64];
  int body_len = snprintf(body, sizeof body, "{\"uptime_s\":%lu,\"rssi\":%d}",
                          (unsigned long)(millis() / 1000), WiFi.RSSI());
  sg_message msg;
  msg.stream = "telemetry";
  msg.body = (const uint8_t *)body;
  msg.body_len = (size_t)body_len;
  msg.encoding = SG_ENCODING_JSON;
  msg.encrypt = 1;
  int rc = sg_nonce_next(&counter, &msg.nonce);
  if (rc != SG_OK) {
    Serial.printf("nonce: %s\n", sg_status_name((sg_status)rc));
    return; // a failed reservation store gives out nothing; next round retries
  }
  uint8_t sealed[384];
  size_t len;
  rc = sg_seal(&dev, &msg, fill_random, nullptr, sealed, sizeof sealed, &len);
  if (rc != SG_OK) {
    Serial.printf("seal: %s\n", sg_status_name((sg_status)rc));
    return;
  }
  mqtt.publish(TOPIC, sealed, len);
}
