// A Tether device on an ESP32 (Arduino core) with PubSubClient: it joins
// Wi-Fi, connects over MQTT (TCP), answers commands and publishes a reading
// every 5 s. Libraries: PubSubClient (Nick O'Leary) and ArduinoJson 7.
//
// PubSubClient speaks MQTT 3.1.1 over TCP only, keeps no persistent session
// across reboots, and its default packet size (256 bytes) is raised below
// so that commands with parameters fit.
#include <WiFi.h>
#include <PubSubClient.h>
#include <ArduinoJson.h>

const char *WIFI_SSID = "your-wifi";
const char *WIFI_PASSWORD = "your-wifi-password";
const char *BROKER_HOST = "192.168.1.10";  // the machine running tether serve
const uint16_t BROKER_PORT = 1883;
const char *DEVICE_ID = "th-1";             // client id and user name
const char *SECRET = "the-secret-shown-once-at-registration";

WiFiClient net;
PubSubClient mqtt(net);
String commandsTopic = String("devices/") + DEVICE_ID + "/commands/#";
String telemetryTopic = String("devices/") + DEVICE_ID + "/telemetry";

// onMessage answers each command {"id","params","ts"} on
// devices/{id}/responses/{command id}.
void onMessage(char *topic, byte *payload, unsigned int length) {
  JsonDocument cmd;
  if (deserializeJson(cmd, payload, length)) return;
  const char *id = cmd["id"];
  if (!id) return;
  Serial.printf("command %s\n", topic);
  String responseTopic = String("devices/") + DEVICE_ID + "/responses/" + id;
  mqtt.publish(responseTopic.c_str(), "{\"status\":\"ok\",\"result\":{\"done\":true}}");
}

void connectMQTT() {
  while (!mqtt.connected()) {
    Serial.print("MQTT connect... ");
    // cleanSession false: commands sent while the device was away wait
    // in its session on the broker.
    if (mqtt.connect(DEVICE_ID, DEVICE_ID, SECRET, nullptr, 0, false, nullptr, false)) {
      Serial.println("ok");
      mqtt.subscribe(commandsTopic.c_str(), 1);
    } else {
      // 5: not authorised (wrong id or secret, or the device is disabled)
      Serial.printf("failed, state %d; retrying in 5 s\n", mqtt.state());
      delay(5000);
    }
  }
}

void setup() {
  Serial.begin(115200);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  while (WiFi.status() != WL_CONNECTED) delay(500);
  mqtt.setServer(BROKER_HOST, BROKER_PORT);
  mqtt.setBufferSize(1024);
  mqtt.setCallback(onMessage);
}

unsigned long lastReading = 0;

void loop() {
  connectMQTT();
  mqtt.loop();
  if (millis() - lastReading >= 5000) {
    lastReading = millis();
    char reading[64];
    snprintf(reading, sizeof reading, "{\"temp\":%.1f}", temperatureRead());
    mqtt.publish(telemetryTopic.c_str(), reading);
  }
}
